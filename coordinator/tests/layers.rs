//! The layout's rules, checked on the source: no two files of any crate in the workspace use each
//! other, directly or in a circle; and in the coordinator, dependencies run one way:
//! `api` (the interfaces) and `service` (the running coordinator) over `ops` (the operations)
//! over `opamp` (the protocol) over `fleet` (the fleet rules), with `metrics` under all; the
//! interfaces and the service never use each other, nor do the interfaces (`api/rest/`,
//! `api/grpc/`) use one another.
//!
//! A file uses another when it names an item of that file's module in a `use` or a path
//! (`crate::...`, `super::...`, a child module); a `mod` declaration is not a use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's files by module path, and what each file uses.
struct Crate {
    name: String,
    /// Module path (without the crate) -> file.
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// File -> the files it uses.
    uses: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the coordinator sits in the workspace")
        .to_owned()
}

/// Source text without comments, string and char literals (their contents are not code).
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(b.len(), |e| i + e + 2);
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") || rest.starts_with("br\"") {
            // Raw strings: up to the quote and as many hashes as opened them.
            let start = rest.find('"').unwrap_or(0);
            let hashes = rest[..start].matches('#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let end = rest[start + 1..]
                .find(&close)
                .map_or(b.len(), |e| i + start + 1 + e + close.len());
            out.push_str("\"\"");
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('a', '\n', '\''); lifetimes ('a) are left alone.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            let end = if b[i + 1] == b'\\' {
                text[i + 3..].find('\'').map_or(b.len(), |e| i + 3 + e + 1)
            } else {
                end
            };
            out.push_str("' '");
            i = end;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The paths of a `use` tree such as `a::{b, c::{d, e as f}, self}`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    let tree = tree.trim();
    if tree.is_empty() {
        return Vec::new();
    }
    if let Some(brace) = tree.find('{') {
        let prefix: Vec<String> = tree[..brace]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
        return split_top(inner)
            .into_iter()
            .flat_map(expand)
            .map(|tail| {
                let tail: Vec<String> = tail.into_iter().filter(|s| s != "self").collect();
                prefix.iter().cloned().chain(tail).collect()
            })
            .collect();
    }
    let path = tree.split(" as ").next().unwrap_or(tree);
    vec![path.split("::").map(|s| s.trim().to_owned()).collect()]
}

fn ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path a file names, with where: its `use` trees, and `crate::`/`super::`/`self::` paths
/// in its code.
fn paths_of(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut paths = Vec::new();
    let mut in_use = vec![false; code.len()];
    let mut from = 0;
    while let Some(at) = code[from..].find("use ") {
        let at = from + at;
        from = at + 4;
        if at > 0 && code[..at].ends_with(ident) {
            continue;
        }
        if let Some(end) = code[from..].find(';') {
            let end = from + end;
            paths.extend(expand(&code[from..end]).into_iter().map(|p| (at, p)));
            in_use[at..end].iter_mut().for_each(|b| *b = true);
            from = end;
        }
    }
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if in_use[at] || (at > 0 && code[..at].ends_with(|c: char| ident(c) || c == ':')) {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| ident(*c) || *c == ':')
                .collect();
            let path = path
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            paths.push((at, path));
        }
    }
    paths
}

/// Inline modules (`mod name { ... }`) of a file's code: their name and span.
fn inline_modules(code: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("mod ") {
        let at = from + at;
        from = at + 4;
        if at > 0 && code[..at].ends_with(ident) {
            continue;
        }
        let name: String = code[from..].chars().take_while(|c| ident(*c)).collect();
        let after = code[from + name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push((name.clone(), open..open + i));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The crate's modules: from the root file, following `mod` declarations (and `#[path]`).
fn modules_of(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut modules = BTreeMap::new();
    let mut todo = vec![(Vec::<String>::new(), root.to_owned())];
    while let Some((module, file)) = todo.pop() {
        let dir = if file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs")
        {
            file.parent().unwrap().to_owned()
        } else {
            file.with_extension("")
        };
        let mut path_attr: Option<String> = None;
        for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let line = line.trim();
            if let Some(p) = line
                .strip_prefix("#[path = \"")
                .and_then(|l| l.strip_suffix("\"]"))
            {
                path_attr = Some(p.to_owned());
                continue;
            }
            let decl = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "));
            if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
                let child_file = match path_attr.take() {
                    Some(p) => file.parent().unwrap().join(p),
                    None if dir.join(format!("{name}.rs")).exists() => {
                        dir.join(format!("{name}.rs"))
                    }
                    None => dir.join(name).join("mod.rs"),
                };
                let mut child = module.clone();
                child.push(name.to_owned());
                todo.push((child, child_file));
            } else if !line.starts_with("#[") {
                path_attr = None;
            }
        }
        modules.insert(module, file);
    }
    modules
}

impl Crate {
    fn load(name: &str, root: &Path) -> Self {
        let modules = modules_of(root);
        let mut uses = BTreeMap::new();
        for (module, file) in &modules {
            let code = code_of(&std::fs::read_to_string(file).unwrap_or_default());
            let inline = inline_modules(&code);
            let mut used = BTreeSet::new();
            let mut paths = paths_of(&code);
            // Paths through a child module without `self::` (`agents::list` in a route table).
            for child in modules
                .keys()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            {
                let name = format!("{}::", child[module.len()]);
                let mut from = 0;
                while let Some(at) = code[from..].find(&name) {
                    let at = from + at;
                    from = at + name.len();
                    if at == 0 || !code[..at].ends_with(|c: char| ident(c) || c == ':') {
                        paths.push((at, vec!["self".into(), child[module.len()].clone()]));
                    }
                }
            }
            for (at, path) in paths {
                // Inside an inline module (`mod tests { ... }`), paths are relative to it.
                let mut here = module.clone();
                here.extend(
                    inline
                        .iter()
                        .filter(|(_, span)| span.contains(&at))
                        .map(|(name, _)| name.clone()),
                );
                let Some(target) = resolve(&modules, &here, &path) else {
                    continue;
                };
                if target != *file {
                    used.insert(target);
                }
            }
            uses.insert(file.clone(), used);
        }
        Self {
            name: name.to_owned(),
            modules,
            uses,
        }
    }
}

/// The file a path used in module `at` names an item of: the deepest module on the path.
fn resolve(
    modules: &BTreeMap<Vec<String>, PathBuf>,
    at: &[String],
    path: &[String],
) -> Option<PathBuf> {
    let parent = |m: &[String]| m[..m.len().saturating_sub(1)].to_vec();
    let (mut module, rest) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (at.to_vec(), &path[1..]),
        "super" => (parent(at), &path[1..]),
        first => {
            // A child module of this one (2018 paths); anything else is another crate's.
            let mut child = at.to_vec();
            child.push(first.to_owned());
            if !modules.contains_key(&child) {
                return None;
            }
            (at.to_vec(), path)
        }
    };
    let mut rest = rest.iter().peekable();
    while rest.peek().is_some_and(|s| *s == "super") {
        rest.next();
        module.pop();
    }
    for seg in rest {
        let mut next = module.clone();
        next.push(seg.clone());
        if !modules.contains_key(&next) {
            break;
        }
        module = next;
    }
    modules.get(&module).cloned()
}

/// Every crate of the workspace: its library (or binary) root.
fn crates() -> Vec<Crate> {
    let root = workspace();
    let mut out = Vec::new();
    for member in [
        "proto",
        "worker-common",
        "gateway",
        "coordinator",
        "cli",
        "loadtest",
        "testkit",
    ] {
        let src = root.join(member).join("src");
        for file in ["lib.rs", "main.rs"] {
            if src.join(file).exists() {
                out.push(Crate::load(&format!("{member}/{file}"), &src.join(file)));
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            for bin in bins.flatten() {
                out.push(Crate::load(&format!("{member}/bin"), &bin.path()));
            }
        }
    }
    out
}

fn short(p: &Path) -> String {
    p.strip_prefix(workspace())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Strongly connected groups of more than one file: files that use each other in a circle.
fn circles(uses: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    // Tarjan's algorithm, recursive: the graphs are small.
    struct State<'a> {
        uses: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.uses.get(v).into_iter().flatten() {
            let Some((w, _)) = s.uses.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.found.push(group);
            }
        }
    }
    let mut s = State {
        uses,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in uses.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_files_use_each_other_in_a_circle() {
    let mut problems = Vec::new();
    let crates = crates();
    let files: usize = crates.iter().map(|c| c.modules.len()).sum();
    assert!(
        files > 80,
        "only {files} files found: the scanner lost its way"
    );
    for c in crates {
        for group in circles(&c.uses) {
            let files: Vec<String> = group.iter().map(|f| short(f)).collect();
            problems.push(format!("{}: {}", c.name, files.join(" <-> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "files that use each other:\n{}",
        problems.join("\n")
    );
}

/// The coordinator's layers, lowest first; a layer may use the ones before it (and itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("metrics", &[]),
    ("fleet", &[]),
    ("opamp", &["fleet"]),
    ("ops", &["opamp", "fleet"]),
    ("api", &["ops", "opamp", "fleet", "metrics"]),
    ("service", &["ops", "opamp", "fleet", "metrics"]),
];

#[test]
fn the_coordinators_layers_are_used_one_way() {
    let root = workspace().join("coordinator/src");
    let c = Crate::load("coordinator", &root.join("lib.rs"));
    let layer_of = |file: &Path| -> Option<String> {
        let rel = file.strip_prefix(&root).ok()?;
        let first = rel
            .components()
            .next()?
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        Some(first.trim_end_matches(".rs").to_owned())
    };
    // The interface a file belongs to: the folder under api/ (rest, grpc, ...); the files directly
    // in api/ (the router, auth, OpenAPI) are shared by all of them.
    let interface_of = |file: &Path| -> Option<String> {
        let rel = file.strip_prefix(root.join("api")).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
        parts.next().map(|_| first)
    };
    let mut problems = Vec::new();
    let mut seen_layers = BTreeSet::new();
    for (file, used) in &c.uses {
        let Some(from) = layer_of(file).filter(|l| l != "lib") else {
            continue;
        };
        seen_layers.insert(from.clone());
        let allowed = LAYERS
            .iter()
            .find(|(l, _)| *l == from)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{} is in no layer ({from})", short(file)));
        for target in used {
            let Some(to) = layer_of(target) else { continue };
            if to != from && !allowed.contains(&to.as_str()) {
                problems.push(format!(
                    "{} ({from}) uses {} ({to})",
                    short(file),
                    short(target)
                ));
            }
            if let (Some(a), Some(b)) = (interface_of(file), interface_of(target))
                && a != b
            {
                problems.push(format!(
                    "{} ({a}) uses {} ({b}): interfaces share only what api/ holds",
                    short(file),
                    short(target)
                ));
            }
        }
    }
    assert_eq!(
        seen_layers,
        LAYERS.iter().map(|(l, _)| l.to_string()).collect(),
        "every layer has files, and every file a layer"
    );
    assert!(
        problems.is_empty(),
        "uses against the layering:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_sees_uses_and_circles() {
    let code = code_of(
        "use crate::a::{b::{C, D}, e as f};\n// use crate::zzz;\nlet s = \"crate::y\"; super::g::h();",
    );
    let paths: Vec<Vec<String>> = paths_of(&code).into_iter().map(|(_, p)| p).collect();
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "b".into(), "C".into()]));
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "e".into()]));
    assert!(paths.contains(&vec!["super".into(), "g".into(), "h".into()]));
    assert!(
        !paths
            .iter()
            .any(|p| p.contains(&"zzz".to_owned()) || p.contains(&"y".to_owned()))
    );
    let a = PathBuf::from("a.rs");
    let b = PathBuf::from("b.rs");
    let c = PathBuf::from("c.rs");
    let uses = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([c.clone()])),
        (c.clone(), BTreeSet::from([a.clone()])),
    ]);
    assert_eq!(circles(&uses), vec![vec![a, b, c]]);
}
