//! Which components a collector config needs, and which of them an agent's build lacks (from the
//! AvailableComponents it reported). Pure.
//!
//! The collector refuses a config that names a component type its build does not contain, in any
//! section, used in a pipeline or not; such a config is not sent to that agent.

use super::drift;
use flotilla_common::store::ConfigFile;
use flotilla_proto::bus::AgentRecord;
use serde_json::Value;
use std::collections::BTreeMap;

/// The sections of a collector config that define components, as AvailableComponents names its
/// kinds.
const KINDS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "connectors",
    "extensions",
];

/// Every component a config's files define, as `kind/type` (`exporters/kafka` for `kafka/eu`),
/// sorted, each once; the files composed as the supervisor composes them. Empty for files that do
/// not compose into a map (not YAML, not a collector config).
pub fn needed(files: &BTreeMap<String, ConfigFile>) -> Vec<String> {
    drift::compose_files(files).map_or_else(Vec::new, |c| needed_in(&c))
}

/// [`needed`] of a config already composed.
pub fn needed_in(composed: &Value) -> Vec<String> {
    let Value::Object(root) = composed else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for kind in KINDS {
        let Some(Value::Object(section)) = root.get(kind) else {
            continue;
        };
        for id in section.keys() {
            let ty = id.split_once('/').map_or(id.as_str(), |(t, _)| t);
            out.push(format!("{kind}/{ty}"));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The entries of `needs` (`kind/type`) that `rec`'s build lacks. Empty when the agent has not
/// reported its components, and a kind it reports nothing of is not held against it (nothing is
/// known, so nothing is held back).
pub fn missing(rec: &AgentRecord, needs: &[String]) -> Vec<String> {
    let Some(have) = rec
        .available_components
        .as_ref()
        .map(|a| &a.components)
        .filter(|c| !c.is_empty())
    else {
        return Vec::new();
    };
    needs
        .iter()
        .filter(|need| {
            let Some((kind, ty)) = need.split_once('/') else {
                return false;
            };
            // Also under the singular kind, as some agents name it.
            let types = have
                .get(kind)
                .or_else(|| have.get(kind.trim_end_matches('s')));
            types.is_some_and(|t| !t.sub_component_map.contains_key(ty))
        })
        .cloned()
        .collect()
}

/// The AvailableComponents of a build with `kinds` (kind, types), for tests.
#[cfg(test)]
pub(crate) fn build_of(kinds: &[(&str, &[&str])]) -> flotilla_proto::opamp::AvailableComponents {
    use flotilla_proto::opamp::ComponentDetails;
    let details = |types: &[&str]| ComponentDetails {
        sub_component_map: types
            .iter()
            .map(|t| (t.to_string(), ComponentDetails::default()))
            .collect(),
        ..Default::default()
    };
    flotilla_proto::opamp::AvailableComponents {
        components: kinds
            .iter()
            .map(|(k, types)| (k.to_string(), details(types)))
            .collect(),
        hash: format!("{kinds:?}").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::AvailableComponents;

    fn file(body: &str) -> ConfigFile {
        ConfigFile {
            body: body.into(),
            content_type: "text/yaml".into(),
        }
    }

    fn built_with(kinds: &[(&str, &[&str])]) -> AgentRecord {
        AgentRecord {
            available_components: Some(Box::new(build_of(kinds))),
            ..Default::default()
        }
    }

    #[test]
    fn a_split_config_needs_the_types_of_every_file_once() {
        let files = BTreeMap::from([
            (
                "a.yaml".to_string(),
                file("receivers: {otlp: {}, otlp/2: {}}\nexporters: {kafka/eu: {}}"),
            ),
            (
                "".to_string(),
                file("exporters: {debug: }\nservice: {extensions: [health_check]}"),
            ),
            (
                "b.yaml".to_string(),
                file("extensions:\n  health_check: {}"),
            ),
        ]);
        assert_eq!(
            needed(&files),
            [
                "exporters/debug",
                "exporters/kafka",
                "extensions/health_check",
                "receivers/otlp"
            ]
        );
        let not_yaml = BTreeMap::from([("a.yaml".to_string(), file("a: [b"))]);
        assert!(needed(&not_yaml).is_empty());
    }

    #[test]
    fn what_the_build_lacks_is_named_and_nothing_is_held_back_before_it_reports() {
        let needs = ["exporters/kafka".to_string(), "receivers/otlp".to_string()];
        let rec = built_with(&[("receivers", &["otlp"]), ("exporters", &["debug"])]);
        assert_eq!(missing(&rec, &needs), ["exporters/kafka"]);
        let singular = built_with(&[("receiver", &["otlp"]), ("exporter", &["kafka"])]);
        assert!(missing(&singular, &needs).is_empty());
        let no_exporters_listed = built_with(&[("receivers", &["otlp"])]);
        assert!(
            missing(&no_exporters_listed, &needs).is_empty(),
            "unknown, not lacking"
        );
        assert!(missing(&AgentRecord::default(), &needs).is_empty());
        let hash_only = AgentRecord {
            available_components: Some(Box::new(AvailableComponents {
                hash: vec![1],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(missing(&hash_only, &needs).is_empty());
    }
}
