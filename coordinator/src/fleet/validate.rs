//! Checks a config's files before anything is sent to agents.
//!
//! An agent that receives a config it cannot load keeps running its old one and reports a failed
//! remote config, so a typo reaches the whole fleet before anyone sees it. [`validate_files`]
//! catches the common mistakes up front and reports every one of them at once, each with the file
//! and, where known, the line and column, so the person editing can fix them in one pass:
//!
//! - `.yaml`/`.yml` files (and the file named "") must parse as YAML. A document that is a
//!   mapping with a `service` key is an OpenTelemetry Collector config, and the `service`
//!   sections, merged as the supervisor merges the files (key order, "" last; a later list
//!   replaces an earlier one), are checked the way the collector checks them at startup: pipeline
//!   ids, non-empty receiver and exporter lists, every referenced receiver, processor, exporter,
//!   connector and extension defined at the top level of some YAML file of the config, and every
//!   connector used on both sides (exporter of one pipeline, receiver of another).
//! - `.json` files must parse as JSON.
//! - Other files are not checked, unless the config holds a collector config: then they must
//!   parse as YAML too (the supervisor reads every file so).
//!
//! What is not checked here: component settings (only the collector binary knows each
//! component's schema) and whether a connector supports the signal types of the pipelines it
//! joins. Whether each agent's build has the components is checked per agent
//! (`fleet::components`), against what it reports.

use saphyr::{AnnotatedMapping, LoadableYamlNode, MarkedYaml, Marker, Scalar, YamlData};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use thiserror::Error;

/// Pipeline types the collector knows; a pipeline id is `<type>` or `<type>/<name>`.
const PIPELINE_TYPES: [&str; 4] = ["traces", "metrics", "logs", "profiles"];

/// One thing wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}{message}", position(.file, *.line, *.column))]
pub struct Problem {
    pub file: String,
    /// 1-based line, when the problem can be pinned to a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    pub message: String,
}

/// `file:line:column: ` or `file: `, the prefix compilers and editors understand.
fn position(file: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("{file}:{line}:{column}: "),
        (Some(line), None) => format!("{file}:{line}: "),
        _ => format!("{file}: "),
    }
}

impl Problem {
    fn at(file: &str, marker: Marker, message: String) -> Self {
        Self {
            file: file.to_owned(),
            line: Some(marker.line()),
            // The YAML parser counts columns from 0; people and editors count from 1.
            column: Some(marker.col() + 1),
            message,
        }
    }
}

/// Checks every file of a config (file name -> body). Returns all problems found, in file-name
/// order and, within a file, in position order.
///
/// The collector's OpAMP supervisor merges the files of a config map into one config, so a
/// collector config may be split over files: components count as defined when any YAML file of
/// the map defines them, the `service` sections are checked as merged (maps key by key, a later
/// file's list replacing an earlier one's), and once a file holds a collector config (a `service`
/// key) every file must parse as YAML, since the supervisor reads each one so whatever its name.
pub fn validate_files(files: &BTreeMap<String, String>) -> Result<(), Vec<Problem>> {
    let mut found: BTreeMap<&str, Vec<Problem>> = BTreeMap::new();
    let mut parsed: Vec<(&str, Vec<Node<'_>>)> = Vec::new();
    let mut unchecked = Vec::new();
    for (name, body) in files {
        let problems = found.entry(name).or_default();
        match extension(name).as_deref() {
            _ if name.is_empty() => parsed.extend(parse_yaml(name, body, problems)),
            Some("yaml" | "yml") => parsed.extend(parse_yaml(name, body, problems)),
            Some("json") => check_json(name, body, problems),
            _ => unchecked.push((name.as_str(), body.as_str())),
        }
    }
    let roots = || {
        parsed
            .iter()
            .flat_map(|(name, docs)| docs.iter().filter_map(mapping).map(move |m| (*name, m)))
    };
    let defined = Defined::union(roots().map(|(_, root)| root));
    // The supervisor merges the files in key order, the "" file last.
    let mut ordered: Vec<(&str, &Mapping<'_>)> = roots().collect();
    ordered.sort_by_key(|(name, _)| (name.is_empty(), *name));
    let services: Vec<(&str, &Node<'_>, &Node<'_>)> = ordered
        .iter()
        .filter_map(|(name, root)| entry(root, "service").map(|(k, v)| (*name, k, v)))
        .collect();
    let collector = !services.is_empty();
    if collector {
        CollectorCheck::new(&defined, &mut found).check(&services);
    }
    if collector {
        for (name, body) in unchecked {
            let problems = found.entry(name).or_default();
            if parse_yaml(name, body, problems).is_none()
                && let Some(last) = problems.last_mut()
            {
                last.message.push_str(
                    " (the collector's supervisor reads every file of a collector config as YAML)",
                );
            }
        }
    }
    let mut problems = Vec::new();
    for (_, mut file) in found {
        // Checks run section by section; sorting gives the order a reader walks the file in.
        file.sort_by_key(|p| (p.line, p.column));
        problems.append(&mut file);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn extension(name: &str) -> Option<String> {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn check_json(file: &str, body: &str, problems: &mut Vec<Problem>) {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
        // serde_json appends the position to its message; it goes into the fields instead.
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&suffix).unwrap_or(&text);
        problems.push(Problem {
            file: file.to_owned(),
            line: (e.line() > 0).then_some(e.line()),
            column: (e.line() > 0).then_some(e.column()),
            message: format!("invalid JSON: {message}"),
        });
    }
}

/// The documents of a YAML file; None (and the problem noted) when it does not parse.
fn parse_yaml<'a>(
    file: &'a str,
    body: &'a str,
    problems: &mut Vec<Problem>,
) -> Option<(&'a str, Vec<Node<'a>>)> {
    if let Err(why) = super::yaml::check(body, true) {
        problems.push(Problem {
            file: file.to_owned(),
            line: None,
            column: None,
            message: why,
        });
        return None;
    }
    match MarkedYaml::load_from_str(body) {
        Ok(docs) => Some((file, docs)),
        Err(e) => {
            problems.push(Problem::at(
                file,
                *e.marker(),
                format!("invalid YAML: {}", e.info()),
            ));
            None
        }
    }
}

type Node<'a> = MarkedYaml<'a>;
type Mapping<'a> = AnnotatedMapping<'a, Node<'a>>;

/// The node's data with any tags (`!!map`, custom tags) looked through.
fn data<'n, 'a>(node: &'n Node<'a>) -> &'n YamlData<'a, Node<'a>> {
    match &node.data {
        YamlData::Tagged(_, inner) => data(inner),
        other => other,
    }
}

fn mapping<'n, 'a>(node: &'n Node<'a>) -> Option<&'n Mapping<'a>> {
    match data(node) {
        YamlData::Mapping(m) => Some(m),
        _ => None,
    }
}

fn is_null(node: &Node<'_>) -> bool {
    matches!(data(node), YamlData::Value(Scalar::Null))
}

/// A string scalar's text; component ids and section names are strings.
fn string(node: &Node<'_>) -> Option<String> {
    match data(node) {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// A mapping key as text: YAML would read `1:` as an integer, the collector as the id "1".
fn key_text(node: &Node<'_>) -> Option<String> {
    match data(node) {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn entry<'n, 'a>(map: &'n Mapping<'a>, key: &str) -> Option<(&'n Node<'a>, &'n Node<'a>)> {
    map.iter()
        .find(|(k, _)| key_text(k).as_deref() == Some(key))
}

/// The keys of a top-level section (`receivers:` ...): what is "defined". A component needs no
/// settings to be defined (`debug:` with a null value is fine), as in the collector.
fn defined(root: &Mapping<'_>, section: &str) -> BTreeSet<String> {
    entry(root, section)
        .and_then(|(_, v)| mapping(v))
        .map(|m| m.keys().filter_map(key_text).collect())
        .unwrap_or_default()
}

/// The components defined in the top-level sections of every file of a config map.
#[derive(Default)]
struct Defined {
    receivers: BTreeSet<String>,
    processors: BTreeSet<String>,
    exporters: BTreeSet<String>,
    connectors: BTreeSet<String>,
    extensions: BTreeSet<String>,
}

impl Defined {
    fn union<'m, 'a: 'm>(roots: impl Iterator<Item = &'m Mapping<'a>>) -> Self {
        let mut all = Self::default();
        for root in roots {
            for (set, section) in [
                (&mut all.receivers, "receivers"),
                (&mut all.processors, "processors"),
                (&mut all.exporters, "exporters"),
                (&mut all.connectors, "connectors"),
                (&mut all.extensions, "extensions"),
            ] {
                set.extend(defined(root, section));
            }
        }
        all
    }
}

/// The three lists of a pipeline.
#[derive(Clone, Copy)]
enum Role {
    Receiver,
    Processor,
    Exporter,
}

impl Role {
    fn list_key(self) -> &'static str {
        match self {
            Role::Receiver => "receivers",
            Role::Processor => "processors",
            Role::Exporter => "exporters",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Receiver => "receiver",
            Role::Processor => "processor",
            Role::Exporter => "exporter",
        }
    }
}

/// A connector named in a pipeline's receivers or exporters, kept for the both-sides check.
struct ConnectorUse<'f> {
    connector: String,
    pipeline: String,
    file: &'f str,
    at: Marker,
}

/// A pipeline as the merged config holds it: each of its lists from the last file that sets it.
#[derive(Default)]
struct MergedPipeline<'f, 'n, 'a> {
    /// Where its id was last written (problems about the pipeline as a whole go there).
    id: Option<(&'f str, &'n Node<'a>)>,
    lists: BTreeMap<&'static str, (&'f str, &'n Node<'a>, &'n Node<'a>)>,
}

/// Checks the `service` section of a collector config merged from its files; each problem is
/// noted against the file (and place) it comes from.
struct CollectorCheck<'f, 'p> {
    /// The file being looked at: problems go to it.
    file: &'f str,
    problems: &'p mut BTreeMap<&'f str, Vec<Problem>>,
    receivers: BTreeSet<String>,
    processors: BTreeSet<String>,
    exporters: BTreeSet<String>,
    connectors: BTreeSet<String>,
    extensions: BTreeSet<String>,
    as_receiver: Vec<ConnectorUse<'f>>,
    as_exporter: Vec<ConnectorUse<'f>>,
}

impl<'f, 'p> CollectorCheck<'f, 'p> {
    fn new(defined: &Defined, problems: &'p mut BTreeMap<&'f str, Vec<Problem>>) -> Self {
        Self {
            file: "",
            problems,
            receivers: defined.receivers.clone(),
            processors: defined.processors.clone(),
            exporters: defined.exporters.clone(),
            connectors: defined.connectors.clone(),
            extensions: defined.extensions.clone(),
            as_receiver: Vec::new(),
            as_exporter: Vec::new(),
        }
    }

    fn problem(&mut self, at: Marker, message: String) {
        let file = self.file;
        self.problems
            .entry(file)
            .or_default()
            .push(Problem::at(file, at, message));
    }

    /// Checks the `service` sections of `services` (file, key, value), in merge order.
    fn check<'n, 'a>(mut self, services: &[(&'f str, &'n Node<'a>, &'n Node<'a>)]) {
        let mut extensions = None;
        let mut pipelines_seen = false;
        let mut last_mapping = None;
        let mut pipelines: BTreeMap<String, MergedPipeline<'f, 'n, 'a>> = BTreeMap::new();
        for (file, service_key, service) in services {
            self.file = file;
            let Some(service) = mapping(service) else {
                self.problem(service_key.span.start, "service must be a mapping".into());
                continue;
            };
            last_mapping = Some((*file, *service_key));
            if let Some((key, list)) = entry(service, "extensions") {
                extensions = Some((*file, key, list));
            }
            let Some((key, section)) = entry(service, "pipelines") else {
                continue;
            };
            pipelines_seen = true;
            let Some(section) = mapping(section) else {
                self.problem(key.span.start, "service.pipelines must be a mapping".into());
                continue;
            };
            for (id_node, pipeline) in section {
                let Some(id) = key_text(id_node) else {
                    self.problem(
                        id_node.span.start,
                        "pipeline ids must be strings like \"traces/name\"".into(),
                    );
                    continue;
                };
                let Some(pipeline) = mapping(pipeline) else {
                    self.problem(
                        id_node.span.start,
                        format!("pipeline \"{id}\" must be a mapping with receivers and exporters"),
                    );
                    continue;
                };
                let merged = pipelines.entry(id).or_default();
                merged.id = Some((file, id_node));
                for role in [Role::Receiver, Role::Processor, Role::Exporter] {
                    if let Some((k, list)) = entry(pipeline, role.list_key()) {
                        merged.lists.insert(role.list_key(), (file, k, list));
                    }
                }
            }
        }
        if let Some((file, key, list)) = extensions {
            self.file = file;
            self.check_extensions(key, list);
        }
        if !pipelines_seen {
            if let Some((file, key)) = last_mapping {
                self.file = file;
                self.problem(key.span.start, "service.pipelines is missing".into());
            }
            return;
        }
        for (id, pipeline) in &pipelines {
            self.check_pipeline(id, pipeline);
        }
        self.check_connectors();
    }

    fn check_extensions(&mut self, key: &Node<'_>, list: &Node<'_>) {
        if is_null(list) {
            return;
        }
        let YamlData::Sequence(items) = data(list) else {
            self.problem(
                key.span.start,
                "service.extensions must be a list of extension ids".into(),
            );
            return;
        };
        for item in items {
            match string(item) {
                None => self.problem(
                    item.span.start,
                    "service.extensions entries must be extension ids (strings)".into(),
                ),
                Some(id) if !self.extensions.contains(&id) => self.problem(
                    item.span.start,
                    format!(
                        "service.extensions uses extension \"{id}\", which is not defined under \
                         \"extensions\""
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    fn check_pipeline(&mut self, id: &str, pipeline: &MergedPipeline<'f, '_, '_>) {
        let Some((file, id_node)) = pipeline.id else {
            return;
        };
        self.file = file;
        if let Some(message) = pipeline_id_problem(id) {
            self.problem(id_node.span.start, message);
        }
        for role in [Role::Receiver, Role::Processor, Role::Exporter] {
            let list = pipeline.lists.get(role.list_key()).copied();
            for (component, file, at) in self.component_list(id, (file, id_node), list, role) {
                self.file = file;
                self.check_reference(id, role, component, at);
            }
        }
    }

    /// The ids in one of a pipeline's lists (as merged: from the file that set it last), with
    /// their file and position; problems with the list itself are reported here.
    fn component_list(
        &mut self,
        pipeline_id: &str,
        (id_file, id_node): (&'f str, &Node<'_>),
        list: Option<(&'f str, &Node<'_>, &Node<'_>)>,
        role: Role,
    ) -> Vec<(String, &'f str, Marker)> {
        // Processors are optional; a pipeline without receivers or exporters moves no data and
        // the collector refuses to start.
        let required = !matches!(role, Role::Processor);
        let missing = format!(
            "pipeline \"{pipeline_id}\" must have at least one {}",
            role.name()
        );
        let (file, key, list) = match list {
            Some((file, key, list)) if !is_null(list) => (file, key, list),
            Some((file, key, _)) => {
                self.file = file;
                if required {
                    self.problem(key.span.start, missing);
                }
                return Vec::new();
            }
            None => {
                self.file = id_file;
                if required {
                    self.problem(id_node.span.start, missing);
                }
                return Vec::new();
            }
        };
        self.file = file;
        let YamlData::Sequence(items) = data(list) else {
            self.problem(
                key.span.start,
                format!(
                    "pipeline \"{pipeline_id}\": {} must be a list of {} ids",
                    role.list_key(),
                    role.name()
                ),
            );
            return Vec::new();
        };
        if items.is_empty() && required {
            self.problem(key.span.start, missing);
        }
        let mut ids = Vec::new();
        for item in items {
            match string(item) {
                Some(component) => ids.push((component, file, item.span.start)),
                None => self.problem(
                    item.span.start,
                    format!(
                        "pipeline \"{pipeline_id}\": {} entries must be component ids (strings)",
                        role.list_key()
                    ),
                ),
            }
        }
        ids
    }

    fn check_reference(&mut self, pipeline: &str, role: Role, component: String, at: Marker) {
        let is_connector = self.connectors.contains(&component);
        let (defined, sections) = match role {
            Role::Receiver => (
                self.receivers.contains(&component) || is_connector,
                "\"receivers\" or \"connectors\"",
            ),
            Role::Processor => (self.processors.contains(&component), "\"processors\""),
            Role::Exporter => (
                self.exporters.contains(&component) || is_connector,
                "\"exporters\" or \"connectors\"",
            ),
        };
        if !defined {
            self.problem(
                at,
                format!(
                    "pipeline \"{pipeline}\" uses {} \"{component}\", which is not defined under \
                     {sections}",
                    role.name()
                ),
            );
            return;
        }
        if is_connector {
            let used = ConnectorUse {
                connector: component,
                pipeline: pipeline.to_owned(),
                file: self.file,
                at,
            };
            match role {
                Role::Receiver => self.as_receiver.push(used),
                Role::Exporter => self.as_exporter.push(used),
                Role::Processor => {}
            }
        }
    }

    /// A connector passes data from the pipeline that exports to it into another pipeline that
    /// receives from it; used on one side only (or both sides of one pipeline, a cycle) it joins
    /// nothing and the collector refuses the config.
    fn check_connectors(&mut self) {
        let mut found = Vec::new();
        for (uses, others, side, other_side) in [
            (&self.as_exporter, &self.as_receiver, "exporter", "receiver"),
            (&self.as_receiver, &self.as_exporter, "receiver", "exporter"),
        ] {
            for used in uses {
                let joined = others
                    .iter()
                    .any(|o| o.connector == used.connector && o.pipeline != used.pipeline);
                if !joined {
                    let message = format!(
                        "connector \"{}\" used as {side} in [{}] pipeline but not used as \
                         {other_side} in any other pipeline",
                        used.connector, used.pipeline
                    );
                    found.push((used.file, Problem::at(used.file, used.at, message)));
                }
            }
        }
        for (file, problem) in found {
            self.problems.entry(file).or_default().push(problem);
        }
    }
}

fn pipeline_id_problem(id: &str) -> Option<String> {
    let (kind, name) = match id.split_once('/') {
        Some((kind, name)) => (kind, Some(name)),
        None => (id, None),
    };
    if !PIPELINE_TYPES.contains(&kind) {
        return Some(format!(
            "pipeline \"{id}\" has unknown type \"{kind}\"; the type must be one of traces, \
             metrics, logs, profiles (as in \"traces\" or \"traces/name\")"
        ));
    }
    if name == Some("") {
        return Some(format!(
            "pipeline \"{id}\" has an empty name after \"/\"; use \"{kind}\" or \"{kind}/name\""
        ));
    }
    None
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
