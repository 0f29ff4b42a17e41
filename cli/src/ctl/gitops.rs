//! Declarative configs (`flotilla ctl apply -f` and `flotilla ctl diff -f`): config documents in
//! YAML files, compared with what the server holds, stored only where they differ (an unchanged
//! config makes no new version). docs/configs.md shows a repository laid out for it.
//!
//! ```yaml
//! name: prod-base
//! selector: deployment.environment=prod
//! files:
//!   collector.yaml: |
//!     receivers: ...
//! files_from:                 # bodies read from files beside this document
//!   extra.yaml: extra.yaml
//! packages: {}                # as the REST API takes them (optional)
//! settings: {}                # (optional)
//! activate: true              # false: stage the version for a rollout (optional)
//! ```

use super::output::out;
use anyhow::{Context, bail};
use flotilla_common::selector::Selector;
use flotilla_common::store::{AgentSettings, PackageOffer};
use flotilla_coordinator::fleet::yaml::to_json;
use saphyr::LoadableYamlNode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One config document, read and resolved (file bodies loaded).
#[derive(Debug)]
pub(super) struct Declared {
    pub name: String,
    pub source: PathBuf,
    /// The PUT body.
    pub body: Value,
}

/// Every config document under `path` (a file, or a directory read recursively: `*.yaml` and
/// `*.yml`, in name order); a document that is not one is refused naming its file.
pub(super) fn read(path: &Path) -> anyhow::Result<Vec<Declared>> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    let mut out: Vec<Declared> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        flotilla_coordinator::fleet::yaml::check(&text, true)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let docs = saphyr::Yaml::load_from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not YAML: {e}", file.display()))?;
        for doc in docs {
            let d = declared(&file, to_json(&doc))
                .with_context(|| format!("{} is not a config document", file.display()))?;
            if let Some(other) = out.iter().find(|o| o.name == d.name) {
                bail!(
                    "config {:?} is declared twice: {} and {}",
                    d.name,
                    other.source.display(),
                    file.display()
                );
            }
            out.push(d);
        }
    }
    if out.is_empty() {
        bail!(
            "no config documents (*.yaml, *.yml) under {}",
            path.display()
        );
    }
    Ok(out)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        files.push(path.to_owned());
        return Ok(());
    }
    for entry in
        std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?
    {
        let p = entry?.path();
        let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if p.is_dir() {
            collect(&p, files)?;
        } else if yaml {
            files.push(p);
        }
    }
    Ok(())
}

const FIELDS: [&str; 7] = [
    "name",
    "selector",
    "files",
    "files_from",
    "packages",
    "settings",
    "activate",
];

fn declared(file: &Path, doc: Value) -> anyhow::Result<Declared> {
    let Value::Object(mut m) = doc else {
        bail!("a document must be a mapping with at least `name` and `files`");
    };
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        bail!("unknown field {k:?} (fields: {})", FIELDS.join(", "));
    }
    let name = match m.remove("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        _ => bail!("`name` is required (a string)"),
    };
    let selector = match m.remove("selector") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => bail!("`selector` must be text such as \"env=prod\", not {other}"),
    };
    let mut files = match m.remove("files") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) if f.values().all(Value::is_string) => f,
        Some(_) => bail!("`files` maps file names to their contents (text)"),
    };
    if let Some(from) = m.remove("files_from") {
        let Value::Object(from) = from else {
            bail!("`files_from` maps file names to paths beside the document");
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        for (name, rel) in from {
            let rel = rel.as_str().context("`files_from` paths are text")?;
            let p = dir.join(rel);
            let body = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            if files.insert(name.clone(), Value::String(body)).is_some() {
                bail!("file {name:?} is in both `files` and `files_from`");
            }
        }
    }
    let mut body = json!({"selector": selector, "files": files});
    for key in ["packages", "settings", "activate"] {
        if let Some(v) = m.remove(key).filter(|v| !v.is_null()) {
            body[key] = v;
        }
    }
    Ok(Declared {
        name,
        source: file.to_owned(),
        body,
    })
}

/// A selector as the API shows it (text or pairs), in a canonical text form (terms sorted).
fn canonical_selector(v: &Value) -> anyhow::Result<String> {
    let s: Selector = match v {
        Value::Object(m) => Selector::from_pairs(
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())),
        ),
        Value::String(s) => s.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        _ => Selector::default(),
    };
    // The order of terms does not change what a selector matches.
    let mut terms: Vec<String> = s.terms().iter().map(ToString::to_string).collect();
    terms.sort();
    Ok(terms.join(","))
}

/// What differs between what the server holds (`current`, the active version, or None) and
/// `declared`, as lines a person reads: empty when nothing does.
pub(super) fn differences(
    current: Option<&Value>,
    declared: &Declared,
) -> anyhow::Result<Vec<String>> {
    let want = &declared.body;
    let Some(have) = current else {
        let files: Vec<&str> = want["files"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        return Ok(vec![format!(
            "+ new config {} (files: {})",
            declared.name,
            files.join(", ")
        )]);
    };
    let mut lines = Vec::new();
    let (a, b) = (
        canonical_selector(&have["selector"])?,
        canonical_selector(&want["selector"])
            .with_context(|| format!("{}: invalid selector", declared.source.display()))?,
    );
    if a != b {
        lines.push(format!("~ selector: {a:?} -> {b:?}"));
    }
    let empty = Map::new();
    let have_files = have["files"].as_object().unwrap_or(&empty);
    let want_files = want["files"].as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = have_files.keys().chain(want_files.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let old = have_files.get(name).and_then(Value::as_str).unwrap_or("");
        let new = want_files.get(name).and_then(Value::as_str).unwrap_or("");
        if old == new {
            continue;
        }
        let diff = similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string();
        lines.extend(diff.lines().map(str::to_owned));
    }
    // Read as the server reads them, so that defaults left out, `1m` against `60s` and the
    // order of keys are no change.
    let same = [
        same_as::<BTreeMap<String, PackageOffer>>(&have["packages"], &want["packages"]),
        same_as::<AgentSettings>(&have["settings"], &want["settings"]),
    ];
    for (key, same) in ["packages", "settings"].into_iter().zip(same) {
        if !same {
            lines.push(format!("~ {key}: {} -> {}", have[key], want[key]));
        }
    }
    Ok(lines)
}

/// Whether `old` and `new` are one value of `T` (null reading as `T`'s default); values that do
/// not read as `T` are compared as they are written.
fn same_as<T: DeserializeOwned + Default + PartialEq>(old: &Value, new: &Value) -> bool {
    let read = |v: &Value| match v {
        Value::Null => Ok(T::default()),
        v => serde_json::from_value::<T>(v.clone()),
    };
    match (read(old), read(new)) {
        (Ok(a), Ok(b)) => a == b,
        _ => old == new,
    }
}

/// Prints what applying would change; true if anything would.
pub(super) fn print_differences(declared: &Declared, lines: &[String]) -> bool {
    if lines.is_empty() {
        out!("= {} unchanged", declared.name);
        return false;
    }
    out!("~ {} ({}):", declared.name, declared.source.display());
    for l in lines {
        out!("  {l}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> anyhow::Result<Declared> {
        let y = saphyr::Yaml::load_from_str(text).unwrap();
        declared(Path::new("configs/x.yaml"), to_json(&y[0]))
    }

    #[test]
    fn documents_become_put_bodies_and_mistakes_are_named() {
        let d =
            doc("name: a\nselector: env=prod\nfiles:\n  c.yaml: |\n    x: 1\nactivate: false\n")
                .unwrap();
        assert_eq!(d.name, "a");
        assert_eq!(
            d.body,
            json!({"selector": "env=prod", "files": {"c.yaml": "x: 1\n"}, "activate": false})
        );
        let e = doc("name: a\nfile: {}\n").unwrap_err().to_string();
        assert!(e.contains("unknown field \"file\""), "{e}");
        assert!(
            doc("selector: x=y\n")
                .unwrap_err()
                .to_string()
                .contains("`name`")
        );
        assert!(doc("name: a\nfiles: [1]\n").is_err());
    }

    #[test]
    fn differences_ignore_the_selector_form_and_show_file_changes() {
        let d = doc("name: a\nselector: b=2,a=1\nfiles:\n  c.yaml: \"x: 1\\n\"\n").unwrap();
        let same = json!({"selector": {"a": "1", "b": "2"}, "files": {"c.yaml": "x: 1\n"}, "packages": {}, "settings": null});
        assert!(differences(Some(&same), &d).unwrap().is_empty());
        let changed = json!({"selector": "a=1", "files": {"c.yaml": "x: 2\n"}});
        let lines = differences(Some(&changed), &d).unwrap();
        assert!(
            lines.iter().any(|l| l.starts_with("~ selector")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "-x: 2") && lines.iter().any(|l| l == "+x: 1"),
            "{lines:?}"
        );
        assert!(differences(None, &d).unwrap()[0].starts_with("+ new config a"));
    }

    #[test]
    fn packages_and_settings_compare_as_the_server_reads_them() {
        let d = doc(
            "name: a\nfiles: {}\nsettings:\n  heartbeat_interval: 60s\npackages:\n  \
                     otelcol: {version: '1.2', download_url: 'https://x/o.tgz'}\n",
        )
        .unwrap();
        // What the server answers for the same thing: defaults filled in, the duration its way.
        let stored = json!({"selector": "", "files": {},
            "settings": {"heartbeat_interval": "1m"},
            "packages": {"otelcol": {"type": "top_level", "version": "1.2",
                "download_url": "https://x/o.tgz", "content_hash": "", "signature": ""}}});
        assert_eq!(
            differences(Some(&stored), &d).unwrap(),
            Vec::<String>::new()
        );
        let mut newer = stored.clone();
        newer["packages"]["otelcol"]["version"] = json!("1.3");
        newer["settings"] = Value::Null;
        let lines = differences(Some(&newer), &d).unwrap();
        assert!(
            lines.iter().any(|l| l.starts_with("~ packages")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("~ settings")),
            "{lines:?}"
        );
        let no_settings = doc("name: a\nfiles: {}\nsettings: {}\n").unwrap();
        let stored = json!({"selector": "", "files": {}, "settings": null, "packages": {}});
        assert!(differences(Some(&stored), &no_settings).unwrap().is_empty());
    }
}
